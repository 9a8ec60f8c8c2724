<?php
// php-amqplib (Debian) doing the benchmark's work the common way: N persistent messages
// published with publisher confirms (in batches), then consumed with manual acks (prefetch
// 1000). Prints JSON: enqueue/s and end-to-end/s.  usage: php php_bench.php PORT N
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;

[$_, $port, $n] = $argv;
$n = (int)$n;
$queue = 'php-bench-' . getmypid();
$conn = new AMQPStreamConnection('127.0.0.1', (int)$port, 'guest', 'guest', '/');
$ch = $conn->channel();
$ch->queue_declare($queue, false, true, false, false);
$ch->confirm_select();
$body = json_encode([[1], new stdClass(), ['callbacks' => null, 'errbacks' => null,
                                           'chain' => null, 'chord' => null]]);
$t0 = microtime(true);
for ($i = 0; $i < $n; $i++) {
    $ch->basic_publish(new AMQPMessage($body, ['content_type' => 'application/json',
        'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT]), '', $queue);
    if ($i % 1000 == 999) $ch->wait_for_pending_acks(30);
}
$ch->wait_for_pending_acks(30);
$t1 = microtime(true);

$con = $conn->channel();
$con->basic_qos(0, 1000, false);
$got = 0;
$con->basic_consume($queue, '', false, false, false, false, function ($msg) use (&$got) {
    $got++;
    $msg->ack();
});
$t2 = microtime(true);
while ($got < $n) $con->wait(null, false, 30);
$t3 = microtime(true);
$ch->queue_delete($queue);
echo json_encode(['enqueue_per_s' => round($n / ($t1 - $t0)),
                  'tasks_per_s' => round($n / ($t3 - $t2))]), "\n";
