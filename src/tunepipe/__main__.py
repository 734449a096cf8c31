from tunepipe.cli import main

main()
