"""Renderings of the hub's records: the terminal status, the HTML pages, the CI gate's summary. They import the kit, never the hub."""
