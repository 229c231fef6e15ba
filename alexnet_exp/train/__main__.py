"""`python -m alexnet_exp.train CONFIG.yaml`: the single-run command (single_run.py). It lives here, not in the
training core, so that the core never imports the command line that imports it."""
from ..single_run import main

raise SystemExit(main())
