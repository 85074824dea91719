"""saslimap's state shared by several gateway hosts: keys, Lua scripts, answers.

This module owns what saslimap keeps in the shared store (:mod:`mailgate.state`)
and how each decision there is made atomically, in one Lua script, so two
hosts cannot both spend a budget's last unit:

- the positive cache's second level: a password verified on host A is a hit
  on host B without an IMAP login (entries: an HMAC under the hosts' shared
  secret and the Redis time it was verified at; ``ttl``, ``refresh_after``
  and ``stale_if_error`` keep their meaning);
- the negative cache, the per-user budgets (per user and client network, the
  undecided ones, the per-user ceiling, with checks in flight counted as a
  sorted set that expires on its own when a host dies mid-check), the
  trickle and the last verified password per user;
- the per-IP limits of the Dovecot listener: failures, checks in flight and
  the exemption after a success.

It is consulted only where this host would ask IMAP anyway (a local cache hit
never waits for the network), and it only ever adds refusals or cached
successes that some host verified: when the store is down every method
answers ``None`` and the caller decides from its own memory alone.  Times
come from Redis (``TIME``), so hosts' clocks need not agree.  Keys name users
by an HMAC of the name, never the name; see docs/saslimap.md.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError

from mailgate.state import Redis, SharedState, StateUnavailable, delete_matching, escape_glob
from saslimap.cache import Key
from saslimap.config import CacheConfig, IpLimitsConfig, LimitsConfig
from saslimap.limits import budget_key, network_key

# Both scripts see every key they touch in KEYS (as Redis asks of scripts).
#   KEYS: 1 positive entry, 2 negative entry, 3 budget failures, 4 undecided
#         failures, 5 checks in flight (budget), 6 ceiling failures, 7 checks in
#         flight (ceiling), 8 trickle, 9 last verified password
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local d = ARGV[1]
local pos = redis.call('GET', KEYS[1])
local stale = 0
if pos and string.sub(pos, 1, 65) == d .. ':' then
  -- "<digest>:<verified at, ms>:<MAC>": the MAC (checked by the host: Redis has no
  -- secret) binds the time, so a writer without the secret cannot make it fresh.
  local at = tonumber(string.match(pos, '^[^:]*:(%d+):'))
  if at and ARGV[12] ~= '1' and now - at < tonumber(ARGV[10]) then
    return {'hit', math.max(now - at, 0), pos}
  end
  stale = 1
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'neg', 0} end
local window, limit, ceiling = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _, k in ipairs({KEYS[3], KEYS[4], KEYS[6]}) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now - window)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
local function flying(q, f)
  local seen, n = {}, 0
  for _, m in ipairs(redis.call('ZRANGE', q, 0, -1)) do
    local dd = string.sub(m, 1, 64)
    if not seen[dd] then
      seen[dd] = true
      if not redis.call('ZSCORE', f, dd) then n = n + 1 end
    end
  end
  return n
end
local nf, nu, nc = redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[6])
local exhausted = (limit > 0 and (nf + flying(KEYS[5], KEYS[3]) >= limit
                                  or nu + flying(KEYS[5], KEYS[4]) >= limit))
  or (ceiling > 0 and nc + flying(KEYS[7], KEYS[6]) >= ceiling)
local held = ''
if exhausted then
  local here = limit > 0 and (nf >= limit or nu >= limit)
  local all = ceiling > 0 and nc >= ceiling
  if not (here or all) then
    held = 'busy'
  elseif ARGV[8] == '0' and here and not all then
    held = 'address'
  else
    local trickle = tonumber(ARGV[6])
    if trickle <= 0 or not redis.call('SET', KEYS[8], '1', 'PX', trickle, 'NX') then
      held = 'user'
    end
  end
end
if held ~= '' and stale == 0 and ARGV[11] ~= '1' and redis.call('GET', KEYS[9]) ~= d then
  local guessed = (limit > 0 and nf >= limit) or (ceiling > 0 and nc >= ceiling)
  local has = pos or redis.call('EXISTS', KEYS[9]) == 1
  return {'held', held, (guessed and has) and 1 or 0}
end
local ttl = tonumber(ARGV[7])
redis.call('ZADD', KEYS[5], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[5], ttl)
redis.call('ZADD', KEYS[7], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[7], ttl)
return {'go', stale}
"""

_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local outcome, d, window, cap = ARGV[1], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[8])
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('ZREM', KEYS[7], ARGV[3])
local function count(k)
  redis.call('ZADD', k, now, d)
  redis.call('PEXPIRE', k, window)
  local n = redis.call('ZCARD', k)
  if n > cap then redis.call('ZREMRANGEBYRANK', k, 0, n - cap - 1) end
end
if outcome == 'ok' then
  if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[1], ARGV[9], 'PX', ARGV[5]) end
  if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[9], d, 'PX', ARGV[6]) end
  redis.call('DEL', KEYS[4])
elseif outcome == 'no' or outcome == 'dropped' then
  local pos = redis.call('GET', KEYS[1])
  if pos and string.sub(pos, 1, 64) == d then redis.call('DEL', KEYS[1]) end
  if redis.call('GET', KEYS[9]) == d then redis.call('DEL', KEYS[9]) end
  if outcome == 'no' then
    if tonumber(ARGV[7]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[7]) end
    redis.call('DEL', KEYS[4])
    count(KEYS[3])
    count(KEYS[6])
  end
elseif outcome == 'unavailable' then
  count(KEYS[4])
end
return 1
"""

#   KEYS: 1 failures, 2 checks in flight, 3 exemption
_IP_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[3]) == 1 then return {'exempt', 0} end
local budget, window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local nf = redis.call('ZCARD', KEYS[1])
if budget > 0 then
  local seen, n = {}, 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local dd = string.sub(m, 1, 64)
    if not seen[dd] then
      seen[dd] = true
      if not redis.call('ZSCORE', KEYS[1], dd) then n = n + 1 end
    end
  end
  if nf >= budget then return {'spent', nf} end
  if nf + n >= budget then return {'busy', nf} end
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
return {'go', nf}
"""

_IP_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[3])
if ARGV[1] == 'ok' then
  redis.call('DEL', KEYS[1])
  if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[3], '1', 'PX', ARGV[5]) end
  return 0
end
if ARGV[1] == 'no' and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  local n = redis.call('ZCARD', KEYS[1])
  if n > tonumber(ARGV[6]) then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - ARGV[6] - 1) end
end
return redis.call('ZCARD', KEYS[1])
"""

_CAP_MIN = 1000  # failures kept per sorted set at most (beyond any limit, they change nothing)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


Outcome = Literal["ok", "no", "unavailable", "dropped", "abandoned"]
Held = Literal["busy", "address", "user"]


@dataclass(frozen=True)
class Admission:
    """What the shared store said about a check this host could not answer itself."""

    kind: Literal["hit", "neg", "held", "go"]
    age: float = 0.0  # "hit": seconds since some host verified this password
    entry: bytes = b""  # "hit": the entry as stored, its MAC to be checked
    stale: bool = False  # "go": a matching entry exists, usable only if IMAP is down
    held: str = ""  # "held": which budget holds it back (Held)
    known: bool = False  # "held": a password of the user's is known and this is not it
    keys: tuple[str, ...] = ()
    member: str = ""  # this check's entry among the checks in flight
    digest: str = ""
    key: Key = ("", "", "")


@dataclass(frozen=True)
class IpAdmission:
    """The shared per-IP limit's answer for one check from a client address."""

    kind: Literal["exempt", "spent", "busy", "go"]
    failures: int
    keys: tuple[str, ...] = ()
    member: str = ""
    pair: str = ""


class SharedChecks:
    """saslimap's keys and scripts in the shared store, for one configuration."""

    def __init__(
        self,
        state: SharedState,
        cache: CacheConfig,
        limits: LimitsConfig,
        iplimits: IpLimitsConfig,
        check_deadline: float,
    ) -> None:
        self.state = state
        self.cache = cache
        self.limits = limits
        self.iplimits = iplimits
        # A check still "in flight" after this long was abandoned (its host died).
        self.in_flight_ttl = _ms(check_deadline + 2.0)
        self._cap = max(_CAP_MIN, limits.failure_budget, limits.user_ceiling, iplimits.budget)
        r = state.redis
        self._admit = r.register_script(_ADMIT)
        self._settle = r.register_script(_SETTLE)
        self._ip_admit = r.register_script(_IP_ADMIT)
        self._ip_settle = r.register_script(_IP_SETTLE)

    # -- keys ---------------------------------------------------------------

    def _keys(self, key: Key, name: str, client_addr: str, counted: str, digest: str) -> list[str]:
        uid = user_id(self.state, name)
        k = self.state.key
        base = ("sasl", "u", uid)
        here = base if counted == name else (*base, "n", network_key(client_addr))
        slot = self.state.digest("key", *key).hex()[:32]
        return [
            k(*base, "pos", slot),
            k(*base, "neg", self.state.digest("neg", slot, digest).hex()[:32]),
            k(*here, "f"),
            k(*here, "u"),
            k(*here, "q"),
            k(*base, "c"),
            k(*base, "cq"),
            k(*base, "t"),
            k(*base, "v"),
        ]

    def password_digest(self, name: str, password: str) -> str:
        """The password's HMAC under the shared secret, bound to the user (hex)."""
        return self.state.digest("pw", name, password).hex()

    # -- the per-user step ----------------------------------------------------

    async def admit(
        self,
        key: Key,
        password: str,
        name: str,
        counted: str,
        client_addr: str,
        known_here: bool = False,
        skip_entry: bool = False,
    ) -> Admission | None:
        """Decide a check that needs IMAP against every host's state; ``None``: store down.

        ``known_here``: this host knows the password as the user's (a stale
        cache entry, the verified memo): never held back, as locally.
        ``skip_entry``: the positive entry is not to be answered from (its MAC
        failed, or this host saw IMAP reject that password since).
        """
        digest = self.password_digest(name, password)
        keys = self._keys(key, name, client_addr, counted, digest)
        member = f"{digest}:{secrets.token_hex(8)}"
        c, lim = self.cache, self.limits
        args: list[Any] = [
            digest, member, _ms(lim.failure_window), lim.failure_budget, lim.user_ceiling,
            _ms(lim.trickle_interval), self.in_flight_ttl, "1" if counted == name else "0",
            _ms(c.refresh_after), _ms(c.ttl) if c.max_entries > 0 else 0,
            "1" if known_here else "0", "1" if skip_entry else "0",
        ]  # fmt: skip

        async def run(_r: Redis) -> Any:
            return await self._admit(keys=keys, args=args)

        reply = await self.state.run(run, "admit")
        if reply is None:
            return None
        try:
            kind = _text(reply[0])
            if kind == "hit":
                return Admission("hit", age=int(reply[1]) / 1000, entry=bytes(reply[2]))
            if kind == "neg":
                return Admission("neg")
            if kind == "held":
                return Admission("held", held=_text(reply[1]), known=int(reply[2]) == 1)
            if kind == "go":
                return Admission(
                    "go", stale=int(reply[1]) == 1, keys=tuple(keys), member=member,
                    digest=digest, key=key,
                )  # fmt: skip
            raise ValueError(f"unknown answer {kind!r}")
        except (IndexError, TypeError, ValueError) as err:  # not our script's answer
            self.state.failed("admit", err)
            return None

    def entry_is_genuine(self, key: Key, admission: Admission) -> bool:
        """Whether a hit's entry was written by a host that has the secret (its MAC)."""
        try:
            digest, at, mac = admission.entry.decode("ascii").split(":")
        except (UnicodeDecodeError, ValueError):
            return False
        return hmac.compare_digest(mac, self._entry_mac(key, digest, at))

    def _entry_mac(self, key: Key, digest: str, at: str) -> str:
        slot = self.state.digest("key", *key).hex()[:32]
        return self.state.digest("entry", slot, digest, at).hex()[:32]

    def settle(self, admission: Admission, outcome: Outcome) -> None:
        """Teach every host what this check's IMAP answer was (the answer does not wait)."""
        if admission.kind != "go":
            return
        keys, digest, member = list(admission.keys), admission.digest, admission.member
        self.state.later(self._settle_keys(keys, digest, member, outcome, admission.key))

    def learn(self, key: Key, password: str, name: str, outcome: Outcome) -> None:
        """A background re-verification's answer ("ok", or "dropped": now rejected)."""
        digest = self.password_digest(name, password)
        keys = self._keys(key, name, "", name, digest)
        self.state.later(self._settle_keys(keys, digest, "", outcome, key))

    async def _settle_keys(
        self, keys: list[str], digest: str, member: str, outcome: str, key: Key
    ) -> None:
        c, lim = self.cache, self.limits
        stored = _ms(c.ttl + c.stale_if_error) if c.max_entries > 0 and c.ttl > 0 else 0
        # This host's wall clock: Redis's could not be signed (the secret stays here);
        # gateway hosts keep time by NTP, and a few ms of skew move an age by as much.
        at = str(round(time.time() * 1000))
        entry = f"{digest}:{at}:{self._entry_mac(key, digest, at)}"
        args: list[Any] = [
            outcome, digest, member, _ms(lim.failure_window), stored,
            _ms(lim.remember_verified), _ms(c.negative_ttl) if c.max_entries > 0 else 0,
            self._cap, entry,
        ]  # fmt: skip

        async def run(_r: Redis) -> Any:
            return await self._settle(keys=keys, args=args)

        await self.state.run(run, "settle")

    # -- the per-IP step (Dovecot listener) -----------------------------------

    async def ip_admit(self, address: str, user: str, password: str) -> IpAdmission | None:
        """Every host's failures and checks in flight from the address's network."""
        net = network_key(address)
        pair = self.state.digest("ip", net, user, password).hex()
        keys = [self.state.key("sasl", "ip", net, part) for part in ("f", "q", "x")]
        member = f"{pair}:{secrets.token_hex(8)}"
        ip = self.iplimits
        args: list[Any] = [ip.budget, _ms(ip.window), member, self.in_flight_ttl]

        async def run(_r: Redis) -> Any:
            return await self._ip_admit(keys=keys, args=args)

        reply = await self.state.run(run, "ip-admit")
        if reply is None:
            return None
        try:
            kind = _text(reply[0])
            if kind not in ("exempt", "spent", "busy", "go"):
                raise ValueError(f"unknown answer {kind!r}")
            return IpAdmission(kind, int(reply[1]), tuple(keys), member, pair)  # type: ignore[arg-type]
        except (IndexError, TypeError, ValueError) as err:  # not our script's answer
            self.state.failed("ip-admit", err)
            return None

    def ip_settle(self, admission: IpAdmission, verdict: str) -> None:
        """Teach every host a check's verdict ("ok", "no", else only ends it); no waiting."""
        ip = self.iplimits
        args: list[Any] = [verdict, admission.pair, admission.member, _ms(ip.window),
                           _ms(ip.exempt_after_success), self._cap]  # fmt: skip
        keys = list(admission.keys)

        async def run(_r: Redis) -> Any:
            return await self._ip_settle(keys=keys, args=args)

        self.state.later(self.state.run(run, "ip-settle"))


def user_id(state: SharedState, name: str) -> str:
    """The user's part of a key: an HMAC of the (folded) name, not the name itself."""
    return state.digest("user", name).hex()[:32]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def flush(
    state: SharedState, limits: LimitsConfig, *, user: str = "", address: str = ""
) -> int:
    """Delete saslimap's shared keys: all, one user's (every realm, service and
    network), or one client network's per-IP limit; how many keys went.

    Raises StateUnavailable if Redis refuses a command (a read-only replica, an
    ACL) or stops answering midway; the keys deleted by then stay deleted.
    """
    if user:
        name = budget_key(user, fold_case=limits.fold_case)
        pattern = escape_glob(state.key("sasl", "u", user_id(state, name))) + "*"
    elif address:
        pattern = escape_glob(state.key("sasl", "ip", network_key(address))) + ":*"
    else:
        pattern = escape_glob(state.key("sasl", "")) + "*"
    try:
        return await delete_matching(state.redis, pattern)
    except (RedisError, OSError) as err:
        raise StateUnavailable(f"shared state {state.where}: {err}") from None
