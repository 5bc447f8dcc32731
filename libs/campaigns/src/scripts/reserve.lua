if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local g = redis.call('GET', KEYS[4])
local c = redis.call('HMGET', KEYS[1], 'starts', 'ends', 'per_user', 'budget', 'reserved', 'epoch', 'amount', 'min', 'max')
if g then
  -- A reservation of an older epoch was lost with Redis's data: it counts for nothing.
  local kind, epoch = string.match(g, '^(%a)|[^|]*|[^|]*|([^|]*)|')
  if kind ~= 'R' or epoch == c[6] then return {'known', g} end
end
-- `x`: a rejection not yet checked against PostgreSQL (the caller confirms it as `X`).
local function reject(reason)
  local rec = 'x|' .. reason .. '|' .. ARGV[6] .. '|' .. ARGV[2]
  redis.call('SET', KEYS[4], rec, 'EX', ARGV[5])
  return {'new', rec}
end
if ARGV[2] == '' then return reject('invalid_user_id') end
local now = tonumber(ARGV[3])
if c[1] ~= '' and now < tonumber(c[1]) then return reject('campaign_inactive') end
if c[2] ~= '' and now >= tonumber(c[2]) then return reject('campaign_inactive') end
if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') >= tonumber(c[3]) then
  return reject('limit_reached')
end
local amount
if c[7] ~= '' then
  amount = tonumber(c[7])
else
  -- Drawn from the grant id: the same id always draws the same amount.
  local lo, hi = tonumber(c[8]), tonumber(c[9])
  amount = lo + tonumber(string.sub(redis.sha1hex(ARGV[1]), 1, 12), 16) % (hi - lo + 1)
end
if tonumber(c[5]) + amount > tonumber(c[4]) then return reject('campaign_exhausted') end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
-- %d: Lua's `..` prints a number of 15 digits or more as `1e+14`.
local rec = 'R|' .. string.format('%d', amount) .. '|' .. ARGV[4] .. '|' .. c[6] .. '|' .. ARGV[2] .. '|' .. ARGV[6]
redis.call('SET', KEYS[4], rec)
redis.call('ZADD', KEYS[3], now, ARGV[1])
return {'new', rec}
