"""What runs leave behind: run directories, the Markdown and HTML reports, the delta against the last green run."""
