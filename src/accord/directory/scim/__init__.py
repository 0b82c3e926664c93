"""SCIM 2.0 at /scim/v2 (RFC 7643, RFC 7644): every scim2 import of Accord is in here."""
