-- Rejections checked against PostgreSQL: each `x|…` record becomes `X|…`, its TTL kept. A record
-- that changed meanwhile (committed by a copy) is left as it is.
for i = 1, #KEYS do
  local rec = redis.call('GET', KEYS[i])
  if rec and string.sub(rec, 1, 2) == 'x|' then
    redis.call('SET', KEYS[i], 'X' .. string.sub(rec, 2), 'KEEPTTL')
  end
end
return 0
