local epoch = redis.call('HGET', KEYS[1], 'epoch')
local done = 0
for i = 2, #ARGV, 4 do
  local key = KEYS[4] .. ARGV[i]
  local rec = redis.call('GET', key)
  local kind, amount, token, rest = nil, nil, nil, nil
  if rec then kind, amount, token, rest = string.match(rec, '^(%a)|([^|]*)|([^|]*)|(.*)$') end
  if kind == 'R' and token == ARGV[i + 1] then
    local rec_epoch, user = string.match(rest, '^([^|]*)|([^|]*)|')
    local action = ARGV[i + 2]
    local counted = rec_epoch == epoch
    if action == 'commit' then
      redis.call('SET', key, 'C|' .. amount .. '|' .. token .. '|' .. rest, 'EX', ARGV[1])
    else
      if counted and action ~= 'forget' then
        redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(amount))
        redis.call('HINCRBY', KEYS[2], user, -1)
      end
      if action == 'duplicate' then
        redis.call('SET', key, 'C|' .. amount .. '|' .. ARGV[i + 3] .. '|' .. rest, 'EX', ARGV[1])
      else
        redis.call('DEL', key)
      end
    end
    done = done + 1
  end
  redis.call('ZREM', KEYS[3], ARGV[i])
end
return done
