"""How mailer talks to mail servers: ``smtp`` (one connection to the relay, pipelined),
``imap`` (the organiser's mailbox, read-only), and ``credentials`` (how to log in, what
may never be printed, the clear-text rule), each given a typed configuration that
``Settings`` builds once (``SmtpConfig``, ``ImapConfig`` in ``config``)."""
