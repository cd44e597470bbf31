"""The risk desk's view: which names and topics are turning negative right now, and why.

:mod:`finsent.console.queries` answers it from PostgreSQL (typed results, one ranking
shared by ``finsent top`` and the web pages); :mod:`finsent.console.pages` renders it as a
server-side HTML console (Starlette routes, no JavaScript beyond the label buttons).
"""
