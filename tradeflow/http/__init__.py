"""The one HTTP layer (WebUI, backend data, IBKR): retry policy, total deadline and size cap
(``client``), and the watchdog that cuts a request's sockets at its deadline (``watchdog``)."""
