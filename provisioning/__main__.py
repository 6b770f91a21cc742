from provisioning.cli import main

main()
