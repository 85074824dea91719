"""After-queue content filter (clamd + spamd between Postfix :10024 and :10025).

Not built yet: see the content filter issue. The package exists so the layout is stable.
"""
