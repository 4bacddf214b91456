-- What the admin API shows of devices: one (ARGV: prefix, '1', device),
-- or a page of the device list in id order after a cursor (ARGV: prefix,
-- '0', cursor ('' at first), limit, connected filter ('' any, '1', '0'),
-- at most this many devices looked at, id prefix ('' for all)).
-- Answers {next cursor ('' if none), view...}, each view a JSON object
-- (see view_of); a device herald holds nothing for has no view.
local P = ARGV[1]
local function view_of(D)
  local m = redis.call('HMGET', key(P, D, 's'),
    'ep', 'sq', 'own', 'cid', 'addr', 'at', 'seen', 'by', 'att', 'kicks')
  local retained = redis.call('HLEN', key(P, D, 'r'))
  if not m[1] and retained == 0 then
    return nil
  end
  return cjson.encode({
    device = D, epoch = m[1] or '', seq = tonumber(m[2] or '0'),
    node = m[3] or '', connection = m[4] or '', address = m[5] or '',
    since = tonumber(m[6] or '0'), seen = tonumber(m[7] or '0'),
    bytes = tonumber(m[8] or '0'), events = redis.call('XLEN', key(P, D, 'b')),
    retained = retained, attaches = tonumber(m[9] or '0'), kicks = tonumber(m[10] or '0'),
    flapping = redis.call('EXISTS', key(P, D, 'kf')) == 1,
  })
end
if ARGV[2] == '1' then
  local view = view_of(ARGV[3])
  if view then
    return {'', view}
  end
  return {''}
end
local cursor, limit, connected, scan = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local starts = ARGV[7]
-- From the cursor, or from the first id with the prefix if that comes
-- later; up to the last id with the prefix (ids are ASCII, below \255).
local from, to = '-', '+'
if cursor ~= '' and cursor >= starts then
  from = '(' .. cursor
elseif starts ~= '' then
  from = '[' .. starts
end
if starts ~= '' then
  to = '[' .. starts .. '\255'
end
local out, last = {''}, nil
local devices = redis.call('ZRANGE', P .. 'devices', from, to, 'BYLEX', 'LIMIT', 0, scan + 1)
for i, D in ipairs(devices) do
  if i > scan or #out - 1 == limit then
    out[1] = last
    return out
  end
  last = D
  local own = redis.call('HGET', key(P, D, 's'), 'own')
  local live = (own and own ~= '') and '1' or '0'
  if connected == '' or connected == live then
    local view = view_of(D)
    if view then
      out[#out + 1] = view
    end
  end
end
return out
