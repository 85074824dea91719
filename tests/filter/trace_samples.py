# ruff: noqa: E501 - log lines are kept as the gateway wrote them, one per line
"""Logs the real gateway wrote (devstack MailChain: Postfix, mail-filter, clamd, spamd, a sink),
for the trace tests: a clean message sent by an authenticated user, a spam held then
released, a virus held, one deferred by the re-injection listener, one bounced by the
internal server, one with two recipients.  Kept byte for byte (only the daemon start and
stop lines are left out)."""

MAILLOG = """\
Dec 04 21:00:50 gateway postfix/smtpd[15929]: connect from localhost[127.0.0.1]
Dec 04 21:00:50 gateway postfix/smtpd[15929]: lost connection after CONNECT from localhost[127.0.0.1]
Dec 04 21:00:50 gateway postfix/smtpd[15929]: disconnect from localhost[127.0.0.1] commands=0/0
Dec 04 21:00:50 gateway postfix/smtpd[15929]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/smtpd[15929]: 054DD2307FC: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=alice@example.com
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 054DD2307FC: message-id=<d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 054DD2307FC: from=<alice@example.com>, size=356, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtpd[15929]: disconnect from localhost[127.0.0.1] ehlo=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=6
Dec 04 21:00:51 gateway postfix/smtpd[15933]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/smtpd[15933]: 064692307FD: client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 064692307FD: message-id=<0f77aaa5381144c093362190bae80bf8@test.example.net>
Dec 04 21:00:51 gateway postfix/smtpd[15933]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Dec 04 21:00:51 gateway postfix/smtpd[15929]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 064692307FD: from=<sender@example.net>, size=409, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtpd[15929]: 06CC62307FE: client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 06CC62307FE: message-id=<93593aaa266e4e9482a19a2b5625dadb@test.example.net>
Dec 04 21:00:51 gateway postfix/smtpd[15929]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Dec 04 21:00:51 gateway postfix/smtpd[15933]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 06CC62307FE: from=<sender@example.net>, size=410, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtpd[15933]: 0753A2307FF: client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 0753A2307FF: message-id=<cc1abade57b84e6face9940997992c0c@test.example.net>
Dec 04 21:00:51 gateway postfix/smtpd[15933]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Dec 04 21:00:51 gateway postfix/smtpd[15929]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 0753A2307FF: from=<sender@example.net>, size=352, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtpd[15929]: 07D0E230800: client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 07D0E230800: message-id=<d4f181d7194a4480863116c8655578f8@test.example.net>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 07D0E230800: from=<sender@example.net>, size=348, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtpd[15929]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Dec 04 21:00:51 gateway postfix/smtpd[15933]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/smtpd[15933]: 08417230801: client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 08417230801: message-id=<d1a0eba2c59e4864831d4e46d17012aa@test.example.net>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 08417230801: from=<sender@example.net>, size=326, nrcpt=2 (queue active)
Dec 04 21:00:51 gateway postfix/smtpd[15933]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=2 data=1 quit=1 commands=6
Dec 04 21:00:51 gateway postfix/smtpd[15947]: connect from localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/smtpd[15947]: 25154230806: client=localhost[127.0.0.1], orig_queue_id=054DD2307FC, orig_client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 25154230806: message-id=<d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 25154230806: from=<alice@example.com>, size=737, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtp[15940]: 054DD2307FC: to=<friend@example.org>, relay=127.0.0.1[127.0.0.1]:40545, delay=0.14, delays=0.01/0.02/0/0.12, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=e713e3f9b979, from downstream: 250 2.0.0 Ok: queued as 25154230806)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 054DD2307FC: removed
Dec 04 21:00:51 gateway postfix/smtp[15952]: 25154230806: to=<friend@example.org>, relay=127.0.0.1[127.0.0.1]:43463, delay=0.01, delays=0/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK1)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 25154230806: removed
Dec 04 21:00:51 gateway postfix/smtp[15940]: 06CC62307FE: to=<user@example.com>, relay=127.0.0.1[127.0.0.1]:40545, delay=0.22, delays=0/0.13/0.01/0.08, dsn=2.7.0, status=sent (250 2.7.0 Ok, discarded, id=6aa25b99ef9f, quarantined as 20261204-210051-7922242611 - INFECTED: Eicar-Test-Signature-Anywhere.UNOFFICIAL)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 06CC62307FE: removed
Dec 04 21:00:51 gateway postfix/smtp[15941]: 064692307FD: to=<user@example.com>, relay=127.0.0.1[127.0.0.1]:40545, delay=0.24, delays=0/0.05/0/0.18, dsn=2.7.0, status=sent (250 2.7.0 Ok, discarded, id=9c358430411e, quarantined as 20261204-210051-3fc94dabf8 - SPAM: score 1001.100)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 064692307FD: removed
Dec 04 21:00:51 gateway postfix/smtpd[15947]: NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 450 4.2.0 <later@example.com>: Recipient address rejected: <later@example.com>: try again later; from=<sender@example.net> to=<later@example.com> proto=ESMTP helo=<filter.test>
Dec 04 21:00:51 gateway postfix/smtp[15940]: 0753A2307FF: to=<later@example.com>, relay=127.0.0.1[127.0.0.1]:40545, conn_use=2, delay=0.29, delays=0/0.21/0/0.08, dsn=4.3.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 451 4.3.0 Downstream: 554 5.5.1 Error: no valid recipients (id=38abbfc30d6e) (in reply to end of DATA command))
Dec 04 21:00:51 gateway postfix/smtpd[15947]: 5DAEC230818: client=localhost[127.0.0.1], orig_queue_id=07D0E230800, orig_client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 5DAEC230818: message-id=<d4f181d7194a4480863116c8655578f8@test.example.net>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 5DAEC230818: from=<sender@example.net>, size=723, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/smtp[15941]: 07D0E230800: to=<gone@example.com>, relay=127.0.0.1[127.0.0.1]:40545, delay=0.35, delays=0/0.23/0/0.12, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=c66d044666b3, from downstream: 250 2.0.0 Ok: queued as 5DAEC230818)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 07D0E230800: removed
Dec 04 21:00:51 gateway postfix/smtp[15952]: 5DAEC230818: to=<gone@example.com>, relay=127.0.0.1[127.0.0.1]:43463, delay=0.01, delays=0/0/0/0.01, dsn=5.1.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown (in reply to RCPT TO command))
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 6001023081A: message-id=<20261204210051.6001023081A@gateway.test>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 6001023081A: from=<>, size=2743, nrcpt=1 (queue active)
Dec 04 21:00:51 gateway postfix/bounce[15958]: 5DAEC230818: sender non-delivery notification: 6001023081A
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 5DAEC230818: removed
Dec 04 21:00:51 gateway postfix/smtp[15952]: 6001023081A: to=<sender@example.net>, relay=127.0.0.1[127.0.0.1]:43463, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK2)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 6001023081A: removed
Dec 04 21:00:51 gateway postfix/smtpd[15947]: 7132623081C: client=localhost[127.0.0.1], orig_queue_id=08417230801, orig_client=localhost[127.0.0.1]
Dec 04 21:00:51 gateway postfix/cleanup[15939]: 7132623081C: message-id=<d1a0eba2c59e4864831d4e46d17012aa@test.example.net>
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 7132623081C: from=<sender@example.net>, size=655, nrcpt=2 (queue active)
Dec 04 21:00:51 gateway postfix/smtp[15940]: 08417230801: to=<u2@example.com>, relay=127.0.0.1[127.0.0.1]:40545, conn_use=3, delay=0.43, delays=0/0.3/0/0.13, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=9761d95c24f1, from downstream: 250 2.0.0 Ok: queued as 7132623081C)
Dec 04 21:00:51 gateway postfix/smtp[15940]: 08417230801: to=<user@example.com>, relay=127.0.0.1[127.0.0.1]:40545, conn_use=3, delay=0.43, delays=0/0.3/0/0.13, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=9761d95c24f1, from downstream: 250 2.0.0 Ok: queued as 7132623081C)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 08417230801: removed
Dec 04 21:00:51 gateway postfix/smtp[15952]: 7132623081C: to=<u2@example.com>, relay=127.0.0.1[127.0.0.1]:43463, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK3)
Dec 04 21:00:51 gateway postfix/smtp[15952]: 7132623081C: to=<user@example.com>, relay=127.0.0.1[127.0.0.1]:43463, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK3)
Dec 04 21:00:51 gateway postfix/qmgr[15927]: 7132623081C: removed
Dec 04 21:00:54 gateway postfix/smtpd[16271]: connect from localhost[127.0.0.1]
Dec 04 21:00:54 gateway postfix/smtpd[16271]: 8B511230922: client=localhost[127.0.0.1]
Dec 04 21:00:54 gateway postfix/cleanup[15939]: 8B511230922: message-id=<0f77aaa5381144c093362190bae80bf8@test.example.net>
Dec 04 21:00:54 gateway postfix/qmgr[15927]: 8B511230922: from=<sender@example.net>, size=1095, nrcpt=1 (queue active)
Dec 04 21:00:54 gateway postfix/smtp[15952]: 8B511230922: to=<user@example.com>, relay=127.0.0.1[127.0.0.1]:43463, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK4)
Dec 04 21:00:54 gateway postfix/qmgr[15927]: 8B511230922: removed
Dec 04 21:00:54 gateway postfix/smtpd[16271]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
"""

FILTER_LOG = """\
2026-12-04 21:00:50,564 mail-filter[15625]: INFO mailgate.metrics_http: metrics on http://127.0.0.1:47061/metrics
2026-12-04 21:00:50,566 mail-filter[15625]: INFO filter.app: mail-filter ready on 127.0.0.1:40545; clamd unix:/tmp/trc4nzlral/chain/clamd/clamd.sock, spamd 127.0.0.1:46435, re-injecting to 127.0.0.1:44115
2026-12-04 21:00:51,160 mail-filter[15625]: INFO filter.service: queue_id=054DD2307FC id=e713e3f9b979 from=<alice@example.com> to=<friend@example.org> size=356 result=clean score=1.100 clamd_ms=9.3 spamd_ms=73.2 reinject_ms=44.4 total_ms=119.2 reply="250 2.0.0 Ok, id=e713e3f9b979, from downstream: 250 2.0.0 Ok: queued as 25154230806"
2026-12-04 21:00:51,242 mail-filter[15625]: INFO filter.service: queue_id=06CC62307FE id=6aa25b99ef9f from=<sender@example.net> to=<user@example.com> size=410 result=virus virus="Eicar-Test-Signature-Anywhere.UNOFFICIAL" quarantine=20261204-210051-7922242611 clamd_ms=19.1 spamd_ms=19.6 reinject_ms=- total_ms=76.0 reply="250 2.7.0 Ok, discarded, id=6aa25b99ef9f, quarantined as 20261204-210051-7922242611 - INFECTED: Eicar-Test-Signature-Anywhere.UNOFFICIAL"
2026-12-04 21:00:51,266 mail-filter[15625]: INFO filter.service: queue_id=064692307FD id=9c358430411e from=<sender@example.net> to=<user@example.com> size=409 result=spam quarantine=20261204-210051-3fc94dabf8 score=1001.100 clamd_ms=10.3 spamd_ms=142.7 reinject_ms=- total_ms=174.7 reply="250 2.7.0 Ok, discarded, id=9c358430411e, quarantined as 20261204-210051-3fc94dabf8 - SPAM: score 1001.100"
2026-12-04 21:00:51,323 mail-filter[15625]: INFO filter.service: queue_id=0753A2307FF id=38abbfc30d6e from=<sender@example.net> to=<later@example.com> size=352 result=tempfail score=1.100 clamd_ms=8.8 spamd_ms=73.3 reinject_ms=0.8 total_ms=78.6 reply="451 4.3.0 Downstream: 554 5.5.1 Error: no valid recipients (id=38abbfc30d6e)"
2026-12-04 21:00:51,385 mail-filter[15625]: INFO filter.service: queue_id=07D0E230800 id=c66d044666b3 from=<sender@example.net> to=<gone@example.com> size=348 result=clean score=1.100 clamd_ms=5.0 spamd_ms=113.7 reinject_ms=2.2 total_ms=117.0 reply="250 2.0.0 Ok, id=c66d044666b3, from downstream: 250 2.0.0 Ok: queued as 5DAEC230818"
2026-12-04 21:00:51,465 mail-filter[15625]: INFO filter.service: queue_id=08417230801 id=9761d95c24f1 from=<sender@example.net> to=<u2@example.com>,<user@example.com> size=326 result=clean score=1.100 clamd_ms=10.4 spamd_ms=122.3 reinject_ms=2.3 total_ms=125.5 reply="250 2.0.0 Ok, id=9761d95c24f1, from downstream: 250 2.0.0 Ok: queued as 7132623081C"
2026-12-04 21:00:57,736 mail-filter[15625]: INFO filter.app: stopping: no new connections; draining for up to 60 s
2026-12-04 21:00:58,078 mail-filter[15625]: INFO filter.app: stopped
"""

AUDIT_LOG = """\
2026-12-04 21:00:54,578 mail-filter[16228]: quarantine action=release id=20261204-210051-3fc94dabf8 by=unix:root from=local to=user@example.com result=ok
"""
