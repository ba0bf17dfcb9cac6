"""listfilter: roster-driven mailing lists for courses and clubs, on Postfix.

Kept empty on purpose: the mail side imports this package once per message.
"""
