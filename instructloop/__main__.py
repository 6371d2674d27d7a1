from instructloop.cli import main

main()
