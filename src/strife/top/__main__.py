from strife.top.cli import entry

entry()
