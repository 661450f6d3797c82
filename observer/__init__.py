"""polyarch observer: watches git remotes and reports every new commit to the dispatcher."""
