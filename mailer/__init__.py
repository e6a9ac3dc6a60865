"""mailer: send personalised invitations and newsletters from a CSV list, exactly once."""

__version__ = "0.1.0"
