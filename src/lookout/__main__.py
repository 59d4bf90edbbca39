from lookout.monitor.cli import main

main()
