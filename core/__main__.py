from lookout.monitor.cli.main import main

main()
