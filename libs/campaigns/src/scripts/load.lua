local have = redis.call('HGET', KEYS[1], 'epoch')
if have and tonumber(have) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'reserved', ARGV[2], 'starts', ARGV[3], 'ends', ARGV[4],
  'per_user', ARGV[5], 'budget', ARGV[6], 'amount', ARGV[7], 'min', ARGV[8], 'max', ARGV[9])
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
