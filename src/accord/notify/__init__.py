"""Notifications: ledger events rendered as human messages and delivered over channels.

`message.render` turns one ledger event envelope into a `Message` for one recipient;
`channels` delivers it by email (SMTP), Slack (incoming webhook or `chat.postMessage`)
or a signed HTTP webhook; `slack` verifies Slack's request signatures and parses the
button clicks that come back. Deciding who hears about what, and retrying, is the
caller's business: channels raise `DeliveryError` with `retryable` set.
"""
