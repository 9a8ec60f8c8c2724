# The job the Sidekiq benchmark runs: nothing.
require 'sidekiq'

Sidekiq.configure_server { |c| c.redis = { url: ENV.fetch('REDIS_URL', 'redis://127.0.0.1:6379/0') } }

class NoopJob
  include Sidekiq::Worker
  def perform(_i); end
end
