from sdft.cli import main

main()
