"""Test support: real services on loopback (services.py), the recording SMTP server
(recording_server.py) and a reply-preserving SMTP client (smtpclient.py)."""
