"""Recipient verification: does a local recipient exist? (static list, SMTP callout to
the internal mail server, LDAP), with a cache and directory-harvest counting. The filter
that uses it is `appliance.filters.recipients`."""
