-- A campaign's budget lowered to a bound PostgreSQL knows (a shard's quota plus what the others
-- have left), never raised: both are upper bounds of what this shard may still grant.
local b = redis.call('HGET', KEYS[1], 'budget')
if b and tonumber(b) > tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'budget', ARGV[1])
  return 1
end
return 0
