from lbsolo.cli.verbs import main

main()
