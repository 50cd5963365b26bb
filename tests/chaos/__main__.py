from tests.chaos.runner import main

main()
