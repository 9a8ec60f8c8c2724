<?php
// The classic php-amqplib producer (RabbitMQ tutorial style): a durable direct exchange, a
// durable queue bound to it, persistent messages with a plain-text or JSON body and no
// Celery headers.  usage: php php_raw_producer.php PORT EXCHANGE QUEUE COUNT
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;

[$_, $port, $exchange, $queue, $count] = $argv;
$conn = new AMQPStreamConnection('127.0.0.1', (int)$port, 'guest', 'guest', '/');
$ch = $conn->channel();
$ch->exchange_declare($exchange, 'direct', false, true, false);
$ch->queue_declare($queue, false, true, false, false);
$ch->queue_bind($queue, $exchange, $queue);
for ($i = 0; $i < (int)$count; $i++) {
    if ($i % 2 == 0) {
        $msg = new AMQPMessage("order-$i", ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT]);
    } else {
        $msg = new AMQPMessage(json_encode(['order' => $i, 'total' => 9.5]),
                               ['content_type' => 'application/json',
                                'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT]);
    }
    $ch->basic_publish($msg, $exchange, $queue);
}
$ch->close();
$conn->close();
echo json_encode(['published' => (int)$count]), "\n";
