"""Notifications: ledger events rendered as human messages and delivered over channels.

`message.render` turns one ledger event envelope into a `Message` for one recipient;
`channels` delivers it by email (SMTP), Slack (incoming webhook or `chat.postMessage`)
or a signed HTTP webhook; `slack` verifies Slack's request signatures and parses the
button clicks that come back. Channels raise `DeliveryError` with `retryable` set.

`outbox` decides who hears about what and on which channels (people's preferences in
`service`, the workflow's `notify:` choices), queues deliveries as durable jobs and
records each outcome in the ledger; `digest` keeps the news of people in digest mode
and sends it once a day.
"""
