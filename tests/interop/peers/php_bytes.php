<?php
// Plain php-amqplib publishing and consuming bodies of any bytes, to check that they travel
// exactly.
//   php php_bytes.php PORT publish EXCHANGE ROUTING_KEY DIR
//       publishes each DIR/NAME.body as it is: correlation_id NAME, content type from
//       DIR/NAME.type when present (else none), transient when NAME starts with "transient"
//   php php_bytes.php PORT consume QUEUE COUNT DIR
//       reads COUNT messages, writes each body to DIR/N.body and prints their properties
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;

$port = (int)$argv[1];
$mode = $argv[2];
$conn = new AMQPStreamConnection('127.0.0.1', $port, 'guest', 'guest', getenv('AMQP_VHOST') ?: '/');
$ch = $conn->channel();
if ($mode === 'publish') {
    [, , , $exchange, $key, $dir] = $argv;
    $names = [];
    foreach (glob("$dir/*.body") as $file) {
        $name = basename($file, '.body');
        $props = ['correlation_id' => $name,
                  'delivery_mode' => str_starts_with($name, 'transient')
                      ? AMQPMessage::DELIVERY_MODE_NON_PERSISTENT
                      : AMQPMessage::DELIVERY_MODE_PERSISTENT];
        if (is_file("$dir/$name.type")) $props['content_type'] = file_get_contents("$dir/$name.type");
        $ch->basic_publish(new AMQPMessage(file_get_contents($file), $props), $exchange, $key);
        $names[] = $name;
    }
    echo json_encode(['published' => $names]), "\n";
} else {
    [, , , $queue, $count, $dir] = $argv;
    $ch->basic_qos(0, 10, false);
    $got = [];
    $ch->basic_consume($queue, '', false, false, false, false, function ($msg) use (&$got, $dir) {
        $n = count($got);
        file_put_contents("$dir/$n.body", $msg->getBody());
        $got[] = ['file' => "$dir/$n.body",
                  'size' => strlen($msg->getBody()),
                  'content_type' => $msg->has('content_type') ? $msg->get('content_type') : null,
                  'delivery_mode' => $msg->has('delivery_mode') ? $msg->get('delivery_mode') : null,
                  'correlation_id' => $msg->has('correlation_id') ? $msg->get('correlation_id') : null];
        $msg->ack();
    });
    $deadline = microtime(true) + 60;
    while (count($got) < (int)$count && microtime(true) < $deadline) {
        try {
            $ch->wait(null, false, 1);
        } catch (\PhpAmqpLib\Exception\AMQPTimeoutException $e) {
        }
    }
    echo json_encode(['messages' => $got]), "\n";
}
$ch->close();
$conn->close();
