"""The sample stream, watchlist and alert rules that ``finsent demo`` replays."""
