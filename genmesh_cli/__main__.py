"""`python -m genmesh_cli`, the same as the `genmesh` console script."""

from genmesh_cli.main import main

if __name__ == "__main__":
    main()
