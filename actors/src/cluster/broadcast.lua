-- One chunk of a broadcast: appends the event to each device with a
-- session after `cursor` in device order (at most `limit` of them) and
-- routes it. A broadcast runs chunk after chunk, so other commands run in
-- between; device order makes every device's turn come once.
-- ARGV: prefix, the event (see event_of; never retained), cursor ('' at
-- first), limit.
-- Answers {devices looked at, buffered, delivered, next cursor ('' at the
-- end)}.
local P, ev = ARGV[1], event_of(ARGV)
local cursor, limit = ARGV[12], tonumber(ARGV[13])
local from = '-'
if cursor ~= '' then
  from = '(' .. cursor
end
local devices = redis.call('ZRANGE', P .. 'devices', from, '+', 'BYLEX', 'LIMIT', 0, limit)
local buffered, delivered, bynode = 0, 0, {}
for _, D in ipairs(devices) do
  local appended = append(P, D, ev, false, bynode)
  if appended then
    buffered = buffered + 1
    delivered = delivered + appended[3]
  end
end
route(P, ev, bynode)
local next_cursor = ''
if #devices == limit then
  next_cursor = devices[#devices]
end
return {#devices, buffered, delivered, next_cursor}
