"""effbench leaderboard: `effbench leaderboard [--db URL]`, or
`streamlit run leaderboard/app.py -- --db URL`."""

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from leaderboard import ui

st.set_page_config(page_title="effbench leaderboard", page_icon=":material/leaderboard:", layout="wide")
page = st.navigation([
    st.Page("views/overview.py", title="Overview", icon=":material/leaderboard:", default=True),
    st.Page("views/explorer.py", title="Explorer", icon=":material/search:"),
    st.Page("views/run.py", title="Run detail", icon=":material/description:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/docs.py", title="Docs", icon=":material/menu_book:"),
])  # fmt: skip
ui.sidebar(ui.store_url())
try:
    page.run()
except SQLAlchemyError as e:  # e.g. the file was replaced by a corrupt one after the page opened
    st.error(f"**Reading the results store failed:** {str(getattr(e, 'orig', None) or e).splitlines()[0]}")
