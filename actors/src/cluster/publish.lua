-- Appends one event to each device (sessions made where missing) and
-- routes it to the node that holds each device's live stream: one PUBLISH
-- per node. Atomic, so each device's events get consecutive seqs and reach
-- its owner in seq order.
-- ARGV: prefix, the event (see event_of), device...
-- Answers {1, {{epoch, seq, live (1 if a node held its stream)}...}}, or,
-- changing nothing, {0, {}} if a device retains its maximum of other names
-- and {2, {}} if the sessions it needs would pass max_sessions.
local P, ev = ARGV[1], event_of(ARGV)
local FIRST = 12
local missing = 0
for i = FIRST, #ARGV do
  missing = missing + 1 - redis.call('EXISTS', key(P, ARGV[i], 's'))
end
if missing > 0 and sessions(P) + missing > ev.maxs then
  return {2, {}}
end
if ev.retain then
  for i = FIRST, #ARGV do
    local rk = key(P, ARGV[i], 'r')
    if redis.call('HEXISTS', rk, ev.name) == 0 and redis.call('HLEN', rk) >= ev.maxr then
      return {0, {}}
    end
  end
end
local out, bynode = {}, {}
for i = FIRST, #ARGV do
  out[#out + 1] = append(P, ARGV[i], ev, true, bynode)
end
route(P, ev, bynode)
return {1, out}
