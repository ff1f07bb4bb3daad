from tokenadmin import main

main()
