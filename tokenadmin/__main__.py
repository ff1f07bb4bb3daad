from tokenadmin.cli import main

main()
