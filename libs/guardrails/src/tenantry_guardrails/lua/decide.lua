-- Rate-limit decisions, a batch of them in one call (tenantry_guardrails.coalescing: a
-- tenant's concurrent decisions travel together). Each decision is atomic and all or
-- nothing: every GCRA policy that applies to the request and, optionally, a slot in the
-- tenant's in-flight set; a request refused by one policy consumes nothing from the
-- others. Decisions run in order, exactly as separate calls would.
--
-- KEYS: each decision's keys, one decision after another: its n policy keys, then the
--       in-flight set when max_in_flight > 0, then the tenant's throttle counters when
--       throttle_ttl_ms > 0. Every key of a call carries one tenant's hash tag ({tenant}),
--       so the script is valid on Redis Cluster.
-- ARGV: the number of decisions, then per decision: its number of keys and of arguments,
--       then the arguments: now_us (0 = the Redis server's clock, shared by every
--       instance; read once per call), n, then per policy: emission interval T_us,
--       tolerance tau_us, cost; then max_in_flight (0 = none), slot_ttl_us, slot_id;
--       then throttle_ttl_ms (0 = do not count refusals) and the n policy names.
-- A refusal adds one to its policy's field (or "in-flight") in the throttle hash, which
-- the ratelimit service drains into sampled ratelimit.throttled events.
-- GCRA: a policy remembers one number, its theoretical arrival time (TAT). A request of
-- cost c is allowed when now >= max(TAT, now) + c*T - tau; then TAT moves to that sum.
-- Returns one reply per decision: {allowed, in_flight_ok, now_us, then per policy: ok,
-- remaining, reset_us, retry_after_us}.
local server_now = nil

local function decide(k, a)
  -- k, a: offsets of this decision's keys in KEYS and of its arguments in ARGV
  local now = tonumber(ARGV[a + 1])
  if now == 0 then
    if server_now == nil then
      local t = redis.call('TIME')
      server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    now = server_now
  end
  local n = tonumber(ARGV[a + 2])
  local allowed = 1
  local out = {}
  local new_tats = {}
  for i = 1, n do
    local base = a + 2 + (i - 1) * 3
    local interval = tonumber(ARGV[base + 1])
    local tolerance = tonumber(ARGV[base + 2])
    local cost = tonumber(ARGV[base + 3])
    local tat = tonumber(redis.call('GET', KEYS[k + i]) or '0')
    if tat < now then tat = now end
    local new_tat = tat + interval * cost
    local allow_at = new_tat - tolerance
    if now < allow_at then
      allowed = 0
      new_tats[i] = tat
      out[#out + 1] = 0
      out[#out + 1] = math.max(0, math.floor((now + tolerance - tat) / interval))
      out[#out + 1] = tat - now
      out[#out + 1] = allow_at - now
    else
      new_tats[i] = new_tat
      out[#out + 1] = 1
      out[#out + 1] = math.floor((now + tolerance - new_tat) / interval)
      out[#out + 1] = new_tat - now
      out[#out + 1] = 0
    end
  end
  local rest = a + 2 + n * 3  -- the arguments after the policies'
  local in_flight_ok = 1
  local max_in_flight = tonumber(ARGV[rest + 1])
  if allowed == 1 and max_in_flight > 0 then
    local slots = KEYS[k + n + 1]
    local ttl = tonumber(ARGV[rest + 2])
    -- Slots of requests that died without releasing expire on their own.
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    if redis.call('ZCARD', slots) >= max_in_flight then
      allowed = 0
      in_flight_ok = 0
    else
      redis.call('ZADD', slots, now + ttl, ARGV[rest + 3])
      redis.call('PEXPIRE', slots, math.ceil(ttl / 1000))
    end
  end
  if allowed == 1 then
    for i = 1, n do
      -- The key expires when its TAT is in the past: an expired key and a fresh one agree.
      redis.call('SET', KEYS[k + i], string.format('%d', new_tats[i]), 'PX',
        math.max(1, math.ceil((new_tats[i] - now) / 1000)))
    end
  end
  local throttle_ttl = tonumber(ARGV[rest + 4])
  if allowed == 0 and throttle_ttl > 0 then
    local nkeys = tonumber(ARGV[a - 1])
    local counters = KEYS[k + nkeys]
    if in_flight_ok == 0 then
      redis.call('HINCRBY', counters, 'in-flight', 1)
    else
      for i = 1, n do
        if out[(i - 1) * 4 + 1] == 0 then
          redis.call('HINCRBY', counters, ARGV[rest + 4 + i], 1)
        end
      end
    end
    -- Undrained counters (no ratelimit service running) do not stay forever.
    if redis.call('PTTL', counters) < 0 then redis.call('PEXPIRE', counters, throttle_ttl) end
  end
  local head = {allowed, in_flight_ok, now}
  for i = 1, #out do head[#head + 1] = out[i] end
  return head
end

local replies = {}
local k, a = 0, 1
for d = 1, tonumber(ARGV[1]) do
  local nkeys, nargs = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  replies[d] = decide(k, a + 2)
  k = k + nkeys
  a = a + 2 + nargs
end
return replies
