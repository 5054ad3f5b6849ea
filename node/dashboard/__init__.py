"""The operator's dashboard (issue 20; docs/DASHBOARD.md): served by ``suanli provide`` on 127.0.0.1, and its
buyer side by ``suanli agent``.

    model.py    pure: earnings per hour and day from co-signed receipts, a job's CPU and memory samples
    charts.py   pure: server-rendered SVG line and bar charts
    page.py     pure: the HTML pages, every value escaped
    board.py    the one reader: the daemon's status and the provider database, read-only and incremental
    buyer.py    the buyer's reader: the provider's board over buyer.db, with suanli jobs' rows and the stored logs
    buyer_page.py  pure: the buyer's pages (the provider's frame, verdicts and charts)
    app.py      the Starlette application: token, Host check, JSON endpoints, server-sent events; a Side per daemon
    serve.py    serve_dashboard: hypercorn's trio worker and the board's refresher, one task of the daemon
    static/     dashboard.js, the only script (swaps the live section on each event)
"""
