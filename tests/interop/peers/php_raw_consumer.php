<?php
// A plain php-amqplib consumer with manual acks: reads COUNT messages from QUEUE and prints
// their bodies and content types.  usage: php php_raw_consumer.php PORT QUEUE COUNT
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;

[$_, $port, $queue, $count] = $argv;
$conn = new AMQPStreamConnection('127.0.0.1', (int)$port, 'guest', 'guest', '/');
$ch = $conn->channel();
$ch->queue_declare($queue, false, true, false, false);
$ch->basic_qos(0, 10, false);
$got = [];
$ch->basic_consume($queue, '', false, false, false, false, function ($msg) use (&$got) {
    $got[] = ['body' => $msg->getBody(),
              'content_type' => $msg->has('content_type') ? $msg->get('content_type') : null];
    $msg->ack();
});
$deadline = microtime(true) + 30;
while (count($got) < (int)$count && microtime(true) < $deadline) {
    try {
        $ch->wait(null, false, 1);
    } catch (\PhpAmqpLib\Exception\AMQPTimeoutException $e) {
    }
}
echo json_encode(['messages' => $got]), "\n";
