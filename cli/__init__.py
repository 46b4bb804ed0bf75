"""featmammo's command line (installed as ``featmammo.cli``).

Click commands only: each module parses options, calls one library function and prints. Heavy
imports happen inside the command functions so ``featmammo --help`` stays instant.
"""
