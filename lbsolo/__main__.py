from lbsolo.cli import main

main()
