"""mail-filter: the after-queue content filter (amavisd-new's role), Postfix :10024 -> :10025.

Postfix hands each message to 127.0.0.1:10024 (:mod:`filter.server`); clamd
and spamd scan it (:mod:`filter.scanning`); policy decides per recipient
(:mod:`filter.policy`); marked copies go back to Postfix on 127.0.0.1:10025
(:mod:`filter.delivery`), and the answer is 250 only after the downstream
accepted them, a 451 whenever anything is unresolved (:mod:`filter.service`).
``mail-filter quarantine`` manages held mail, ``mail-filter learn`` teaches
SpamAssassin's Bayes (:mod:`filter.cli`).  Shared pieces come from
:mod:`mailgate`; nothing here imports :mod:`saslimap`.
"""
