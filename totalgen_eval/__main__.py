"""`python -m totalgen_eval` runs the command line (also under torchrun: `torchrun -m totalgen_eval train ...`)."""
from .cli import main

main()
