from dispatcher.cli import main

main(prog_name="polyarch-dispatcher")
