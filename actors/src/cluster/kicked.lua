-- A stream of the device was kicked while its client was still there (the
-- kicked stream's node decides, see connection.rs): the kick ping-pong
-- rules, kept in Redis so they hold on every node (kicks.rs has them for
-- one node). `old` was kicked by `new` (instance names, '' if none).
-- ARGV: prefix, device, old, new, instance_window_ms, flapping_kicks,
-- flapping_window_ms, flapping_cooldown_ms, refuse ('1' under the refuse
-- policy).
-- Answers 1 if the device is flapping now (the first time it crosses the
-- threshold), else 0.
local P, D, old, new = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local iw, fk, fw = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cooldown, refuse = tonumber(ARGV[8]), ARGV[9] == '1'
local now = now_ms()
local ki, kr = key(P, D, 'ki'), key(P, D, 'kr')
if old ~= '' and old ~= new then
  -- Kicked instances and when; a client inventing names keeps 16 at most.
  redis.call('ZADD', ki, now, old)
  redis.call('ZREMRANGEBYSCORE', ki, '-inf', now - iw)
  local n = redis.call('ZCARD', ki)
  if n > 16 then
    redis.call('ZREMRANGEBYRANK', ki, 0, n - 17)
  end
  redis.call('PEXPIRE', ki, iw)
end
redis.call('RPUSH', kr, now)
while true do
  local first = redis.call('LINDEX', kr, 0)
  if first and tonumber(first) <= now - fw then
    redis.call('LPOP', kr)
  else
    break
  end
end
redis.call('PEXPIRE', kr, fw)
local cooling = redis.call('EXISTS', key(P, D, 'kc')) == 1
if redis.call('LLEN', kr) >= fk and not cooling then
  redis.call('DEL', kr)
  redis.call('SET', key(P, D, 'kf'), 1, 'PX', math.max(fw, cooldown))
  if refuse then
    redis.call('SET', key(P, D, 'kc'), 1, 'PX', cooldown)
  end
  return 1
end
return 0
