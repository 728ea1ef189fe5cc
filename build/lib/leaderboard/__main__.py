"""`python -m leaderboard run leaderboard/app.py [streamlit options]`: Streamlit's own CLI, started
after the pages' heavy imports (pandas, SQLAlchemy, scipy: seconds on a busy machine), so the
first visitor does not wait for them. `effbench leaderboard` starts the site this way."""

import sys

from streamlit.web.cli import main

import leaderboard.table  # noqa: F401
import leaderboard.ui  # noqa: F401

sys.exit(main(prog_name="streamlit"))
