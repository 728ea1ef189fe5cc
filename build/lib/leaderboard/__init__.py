"""effbench leaderboard: a read-only Streamlit site over the results store (`effbench leaderboard`)."""
